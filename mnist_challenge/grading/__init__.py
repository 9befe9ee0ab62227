"""Reading anyone's notebook: the model it defines (``inspect --notebook``) and its executed logs graded against the
rules (``check-notebook``)."""
