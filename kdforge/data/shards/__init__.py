"""Image datasets as tar shards in WebDataset's format (`<key>.jpg` + `<key>.cls` members; the `webdataset`
package reads them too), for many machines reading disjoint shards:

- `pack.py`: `kdforge pack`, an image folder into shuffled shards with an index of where each image lies;
- `reader.py`: `data.name: webdataset`, the shards as a streamed dataset whose epoch gives each rank whole shards.
"""

from .pack import pack_split
from .reader import open_shards

__all__ = ["open_shards", "pack_split"]
