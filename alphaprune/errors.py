"""The error type for bad input that a user can fix.

Anything raised as `UserError` reaches the user as one line (CLI: stderr + exit code 2;
app: `st.error`), never as a traceback. The message says what is wrong and what to do.
"""


class UserError(Exception):
    """Bad input: an unknown model, a missing file, an out-of-range setting ..."""
