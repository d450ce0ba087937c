"""The Kaggle COVID-19 Radiography Database as it ships: the names the synthetic generator writes
and the covid19-radiography layout reads."""

from chestxray.tasks import TASKS

DIR = "COVID-19_Radiography_Dataset"  # the archive's top folder
CLASSES = TASKS["4class"]  # one folder per class, named as the 4-class task names its classes
IMAGES, MASKS = "images", "masks"  # <Class>/images/<Class>-<n>.png, <Class>/masks/<Class>-<n>.png (lung masks)
REAL_COUNTS = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}


def metadata_file(cls: str) -> str:
    """The per-class metadata workbook beside the class folders (its column ``FILE NAME`` lists the images)."""
    return f"{cls}.metadata.xlsx"
