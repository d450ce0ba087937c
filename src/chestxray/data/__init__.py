"""The data: download, layouts, validation, EDA, split and the image cache."""
