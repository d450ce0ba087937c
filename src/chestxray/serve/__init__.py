"""The model in use: the MLflow pyfunc model, the predict command and the web page."""
