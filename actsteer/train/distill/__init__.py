"""Context distillation: a system prompt compiled into steering vectors. ``config`` holds the
settings, ``teacher`` the prompted model's replies and log-probabilities, ``fidelity`` the
teacher-vs-student KL, ``loop`` the training; ``actsteer.train.extract.distill`` is the entry."""
