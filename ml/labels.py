"""The six RSNA 2019 intracranial-hemorrhage labels, in the challenge's order."""

LABELS: tuple[str, ...] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
SUBTYPES: tuple[str, ...] = LABELS[1:]

# Weighted log loss of the RSNA challenge: "any" counts twice, each subtype once.
LABEL_WEIGHTS: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
