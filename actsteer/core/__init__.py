"""The ground floor: values with no model in them. Steering vectors and their files, the
expression language, and ``Steering`` (the one place that validates, describes and keys a
steering). Nothing here imports transformers or touches a loaded model."""
