"""One place that decides how progress bars look (tqdm, written to stderr)."""

from tqdm.auto import tqdm


def progress_bar(iterable=None, **kwargs):
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
