"""Built-in dataset loaders; importing this package registers them."""

from . import cifar, cinic10, digits, idx, imagefolder, imagenet, svhn, webdataset  # noqa: F401
