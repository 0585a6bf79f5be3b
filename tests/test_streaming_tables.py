"""The flat tables a streamed split keeps its file names and shard locations in (`data/streaming/tables.py`)."""

import pickle

import pytest

from kdforge.data.streaming.tables import Locations, StringTable


def test_a_string_table_gives_back_every_string_and_takes_subsets():
    names = ["a/b.JPEG", "", "épée/ü.png", "x" * 300, "bad\udcff.jpg"]  # a name that is not UTF-8 too
    table = StringTable(names)
    assert len(table) == 5 and list(table) == names and table[-1] == names[-1] and table[1:3] == names[1:3]
    assert list(table.take([4, 0, 0])) == [names[4], names[0], names[0]]
    assert pickle.loads(pickle.dumps(table)) == names  # as spawned DataLoader workers receive it
    with pytest.raises(IndexError):
        table[5]
    with pytest.raises(IndexError):
        table.take([7])
    assert list(StringTable()) == [] and len(StringTable([]).take([])) == 0


def test_locations_keep_each_file_once_and_give_back_the_triples():
    entries = [("s0.tar", 512, 100), ("s1.tar", 512, 7), ("s0.tar", 1536, 9)]
    locations = Locations(entries)
    assert list(locations) == entries and list(locations.files) == ["s0.tar", "s1.tar"]
    assert locations.file_ids.tolist() == [0, 1, 0] and locations[2] == ("s0.tar", 1536, 9)
    assert list(locations.take([2, 1])) == [entries[2], entries[1]]
