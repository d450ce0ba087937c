"""The classification tasks (``data.task``) and their classes: the one list of class names."""

COVID = "COVID"  # the positive class: sensitivity, specificity and the operating point are about it
TASKS: dict[str, tuple[str, ...]] = {
    "4class": (COVID, "Lung_Opacity", "Normal", "Viral Pneumonia"),
    "3class": (COVID, "Normal", "Viral Pneumonia"),
    "binary": (COVID, "non-COVID"),
}
CLASSES = TASKS["4class"]  # every source label maps to one of these, or is left out
