"""The one exception type for problems a user can fix (bad params, missing files, bad data)."""


class UserError(Exception):
    """A problem the user can fix: the message names the file or key and what to do.

    Stages catch it at their edge and print it as one line with no traceback; any other
    exception is a bug and keeps its traceback.
    """
