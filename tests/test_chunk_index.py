"""The chunk index answers lookups from the records it read, without building a dict of every chunk,
and answers exactly what the dict answers."""

import random
import threading

from artifactstore.backends.memory import MemoryBackend
from artifactstore.content.index import ChunkIndex, Location, write_index
from artifactstore.content.pack import PackEntry


def chunk_id(rng: random.Random, prefix: bytes = b"") -> bytes:
    return prefix + rng.randbytes(32 - len(prefix))


def published(seed: int = 0) -> tuple[MemoryBackend, list[bytes]]:
    """Index files with what makes lookups hard: a chunk in several packs of one file and of two files,
    twice in one pack, chunks whose ids share their first 8 bytes, a pack listed by two files, an
    empty pack (and a pack with no chunks), and a chunk id ending in zero bytes."""
    rng = random.Random(seed)
    shared_prefix = rng.randbytes(8)
    chunks = [chunk_id(rng) for _ in range(200)] + [chunk_id(rng, shared_prefix) for _ in range(5)]
    chunks.append(rng.randbytes(24) + bytes(8))
    backend = MemoryBackend()
    packs = []
    for p in range(12):
        entries = [PackEntry(rng.choice(chunks), rng.randrange(1 << 40), rng.randrange(1, 1 << 20))
                   for _ in range(rng.randrange(1, 40) if p != 7 else 0)]
        if p == 3:
            entries.append(PackEntry(entries[0].chunk, 7, entries[0].length))  # the same chunk twice in one pack
        packs.append((rng.randbytes(32), entries))
    write_index(backend, packs[:5])
    write_index(backend, packs[4:9])  # pack 4 in two files
    write_index(backend, packs[9:] + [(rng.randbytes(32), [])])
    return backend, chunks + [chunk_id(rng) for _ in range(20)]  # and ids no pack holds


def test_lookups_before_and_after_the_records_are_sorted_in_agree():
    backend, chunks = published()
    decoded = ChunkIndex.load(backend)
    decoded.pack_entries  # noqa: B018 (puts every record into the dicts)
    for chunk in chunks:  # a fresh index for each, whose few searches do not sort its records in
        assert ChunkIndex.load(backend).all_locations(chunk) == decoded.all_locations(chunk)
        assert ChunkIndex.load(backend).get(chunk) == decoded.get(chunk)
        assert (chunk in ChunkIndex.load(backend)) == (chunk in decoded)
    searched = ChunkIndex.load(backend)
    for chunk in chunks * 3:  # past the searches that sort the records in
        assert searched.all_locations(chunk) == decoded.all_locations(chunk)
    assert searched.packs == decoded.packs and searched.generation == decoded.generation == 13
    assert searched.pack_entries == decoded.pack_entries


def batch_lookup(index: ChunkIndex, chunks: list[bytes]) -> list[list[Location]]:
    """``all_locations_of`` as lists, each answer from the arrays holding a chunk's one location."""
    found, others = index.all_locations_of(chunks)
    assert len(found.pack) == len(found.offset) == len(found.length) == len(chunks)
    answers = []
    for k, chunk in enumerate(chunks):
        if k in others:
            assert found.pack[k] == -1 and found.length[k] == -1
            answers.append(others[k])
        else:
            answers.append([found.location(k)])
            assert found.packs.count(found.location(k).pack) == 1
    return answers


def test_a_batch_of_lookups_answers_what_one_lookup_each_answers():
    backend, chunks = published(3)
    decoded = ChunkIndex.load(backend)
    decoded.pack_entries  # noqa: B018
    batch = chunks * 2 + chunks[::-1]  # repeats, in any order, known or not
    lazy = ChunkIndex.load(backend)
    assert batch_lookup(lazy, batch) == [decoded.all_locations(c) for c in batch]
    assert batch_lookup(lazy, batch) == batch_lookup(decoded, batch)
    found, others = lazy.all_locations_of(batch)
    single = {k for k, chunk in enumerate(batch) if len(decoded.all_locations(chunk)) == 1}
    assert len(single - set(others)) > len(single) * 3 // 4, "the arrays answer chunks with one location"
    assert set(decoded.all_locations_of(batch)[1]) == set(range(len(batch))) - single, \
        "with every record in the dicts, the arrays answer every chunk with one location"
    assert set(found.packs) < lazy.packs, "the arrays number only the packs their chunks lie in"
    assert batch_lookup(lazy, []) == []
    assert lazy._unsorted is not None, "a batch searches the records: it does not sort them in"
    later = MemoryBackend()  # dicts holding the first files, records of a file read since: both answer
    write_index(later, [(random.Random(4).randbytes(32), [PackEntry(c, 5, 6) for c in chunks[:30]])])
    lazy.pack_entries  # noqa: B018
    for index in (lazy, decoded):
        index.read_files(later)
    assert lazy._unsorted is not None
    decoded.pack_entries  # noqa: B018
    assert batch_lookup(lazy, batch) == [decoded.all_locations(c) for c in batch]
    assert batch_lookup(ChunkIndex(), chunks[:3]) == [[], [], []]
    twice = MemoryBackend()  # a damaged index listing one record twice: both are answered, as one by one
    write_index(twice, [(bytes(32), [PackEntry(chunks[0], 1, 2), PackEntry(chunks[0], 1, 2)])])
    assert batch_lookup(ChunkIndex.load(twice), chunks[:1]) == [ChunkIndex.load(twice).all_locations(chunks[0])]
    assert len(ChunkIndex.load(twice).all_locations(chunks[0])) == 2


def test_files_read_later_and_packs_added_keep_the_order_of_first_listing():
    backend, chunks = published(1)
    later = MemoryBackend()
    rng = random.Random(2)
    write_index(later, [(rng.randbytes(32), [PackEntry(c, 1, 2) for c in chunks[:50]])])
    added = (rng.randbytes(32), [PackEntry(c, 3, 4) for c in chunks[25:75]])
    lazy, eager = ChunkIndex.load(backend), ChunkIndex.load(backend)
    eager.pack_entries  # noqa: B018
    for index in (lazy, eager):
        index.read_files(later)
    assert lazy.all_locations(chunks[0])[-1].offset == 1, "a file read later lists its locations last"
    for index in (lazy, eager):
        index.add_pack(*added)
    for chunk in chunks:
        assert lazy.all_locations(chunk) == eager.all_locations(chunk)


def test_a_chunk_stays_found_while_another_thread_sorts_the_records_in():
    """A follower's thread and the server's loads share an index: a lookup during the sort must not
    answer "not stored" for a chunk it found a moment before."""
    rng = random.Random(3)
    backend, chunks = MemoryBackend(), []
    for _ in range(2):
        packs = [(rng.randbytes(32), [PackEntry(rng.randbytes(32), i * 100, 100) for i in range(1000)])
                 for _ in range(40)]
        chunks += [e.chunk for _, entries in packs for e in entries]
        write_index(backend, packs)
    probe = chunks[-20:]  # listed last: the last to reach the dicts
    for _ in range(3):
        index = ChunkIndex.load(backend)
        assert all(chunk in index for chunk in probe)
        sorting = threading.Thread(target=lambda: index.pack_entries)
        sorting.start()
        missed = 0
        while sorting.is_alive():
            missed += sum(index.get(chunk) is None or not index.all_locations(chunk) for chunk in probe)
        sorting.join()
        assert missed == 0
        assert all(len(index.all_locations(chunk)) == 1 for chunk in probe)
