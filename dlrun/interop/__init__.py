"""Other frameworks' files in and out: Keras (.keras, .h5), and the export formats.

Optional libraries (h5py, onnx, safetensors) are imported inside the functions that need them;
a missing one is a DlrunError naming `pip install 'dlrun[interop]'`.
"""
