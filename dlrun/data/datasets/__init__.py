"""One module per dataset: importing this package imports each one, and each registers its Source
in `dlrun.data.registry.DATASETS`. A new module here is a new dataset; nothing else names it."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
