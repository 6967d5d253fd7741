"""Model files of other tools, in and out: Keras (.keras, .h5), ONNX, safetensors.

Sits above graph/ and runs/, below api/. The libraries each format needs are optional and imported
inside the functions that use them.
"""
