"""The in-process runtime around a Hugging Face model: how a generate's tokens become replies
(``replies``). The model handle, the worker and the generation helpers move here in turn."""
