"""Every private API of another library that tunelab relies on, one module per library, each with
a test in tests/test_compat.py that fails when a release changes it:

- `hydra_internals`: Hydra's config loader, override dirname and launcher classes (the in-process
  launcher and the joblib launcher's job count).
- `mlflow_internals`: which server MLflow runs an app factory under, and the view that sends the
  UI's page (tunelab's MLflow app, tracking/ui_app.py).
- `torch_internals`: torch's fused per-tensor norm (the training step's gradient norm).
"""
