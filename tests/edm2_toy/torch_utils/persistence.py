"""A persistence wrapper in the style of EDM2's ``torch_utils.persistence`` (written for these tests).

``@persistent_class`` returns a subclass of the decorated class, under the same name and module,
that records its constructor arguments, so a pickle rebuilds the object by calling the constructor
again.  The wrapper's ``__init__`` lives in this file, not in the network file: that is what
``dtrsurgeon apply`` must see through.
"""

import importlib


def _rebuild(module, name, args, kwargs, state):
    obj = getattr(importlib.import_module(module), name)(*args, **kwargs)
    obj.__dict__.update(state)
    return obj


def persistent_class(orig_class):
    class Decorator(orig_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.init_args = args
            self.init_kwargs = dict(kwargs)

        def __reduce__(self):
            return _rebuild, (type(self).__module__, type(self).__name__, self.init_args, self.init_kwargs, self.__dict__)

    Decorator.__name__ = orig_class.__name__
    Decorator.__module__ = orig_class.__module__
    return Decorator
