"""Person names (PN, PS3.5 6.2) as the index matches them: folded once, in Python.

PS3.4 C.2.2.2.1 lets a Query SCP match PN values without regard to case. SQLite's LIKE and
upper() fold ASCII only and PostgreSQL's LIKE folds nothing, so the node stores
`match_key(PatientName)` beside the name and folds the query value the same way: both
databases then compare the same strings.
"""

from __future__ import annotations


def match_key(name: str) -> str:
    """`name` folded for case-insensitive matching: upper case, Unicode-aware ('é' -> 'É').

    The component separators ('^', '=') and the C-FIND wildcards ('*', '?') are unchanged.
    """
    return name.upper()
