"""The store version of an entry: its sequence, or for a replicated namespace a composite that breaks ties.

Two regions can write the same key with the same sequence (microseconds). Cassandra settles equal write
timestamps by comparing cell values, Elasticsearch's external versioning keeps whichever write arrived first: the
two stores, and two regions, would disagree. For a replicated namespace every store therefore gets
``sequence * MAX_REGIONS + rank``, where rank is the position of the entry's origin region (the region whose log
it was written to) in the namespace's ``replication.regions``. A newer sequence still always wins; between equal
sequences the region listed later wins, in every store and every region alike.
"""

from __future__ import annotations

from typing import Final

#: Regions a replicated namespace may list; a power of two, so the rank takes the version's low 4 bits.
MAX_REGIONS: Final = 16
_MAX_LONG: Final = (1 << 63) - 1
#: The largest sequence a replicated namespace accepts: its composite still fits a signed 64-bit store version.
#: (About 5.7e17: microseconds since 1970 reach it in the year 20245.)
MAX_REPLICATED_SEQUENCE: Final = (_MAX_LONG - (MAX_REGIONS - 1)) // MAX_REGIONS


def replicated_version(sequence: int, rank: int) -> int:
    """The store version of an entry of a replicated namespace written in the region of ``rank``."""
    if not 0 <= rank < MAX_REGIONS:
        raise ValueError(f"region rank {rank} is outside 0..{MAX_REGIONS - 1}")
    if not 0 <= sequence <= MAX_REPLICATED_SEQUENCE:
        raise ValueError(
            f"sequence {sequence} is above {MAX_REPLICATED_SEQUENCE}, the largest a replicated namespace takes"
        )
    return sequence * MAX_REGIONS + rank


def sequence_of(version: int) -> int:
    """The sequence inside a replicated version."""
    return version // MAX_REGIONS


def rank_of(version: int) -> int:
    """The origin region's rank inside a replicated version."""
    return version % MAX_REGIONS
