"""Built-in dataset loaders; importing this package registers them."""

from . import cifar, cinic10, digits, imagefolder, svhn  # noqa: F401
