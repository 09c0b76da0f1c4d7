"""Explain one prediction: what every object query saw, predicted and became.

`core` runs the network once and returns the tensors (`explain`, `Explanation`); `figures`
draws them as PIL images; `report` writes the HTML page and PNG sheets.
"""

from .core import (
    BELOW_THRESHOLD,
    DROP_REASONS,
    DUPLICATED_STUFF,
    KEPT,
    NO_OBJECT,
    SMALL_AREA,
    Explanation,
    QueryInfo,
    as_predictor,
    explain,
    query_statuses,
    segment_queries,
)

__all__ = ["BELOW_THRESHOLD", "DROP_REASONS", "DUPLICATED_STUFF", "KEPT", "NO_OBJECT", "SMALL_AREA",
           "Explanation", "QueryInfo", "as_predictor", "explain", "query_statuses", "segment_queries"]
