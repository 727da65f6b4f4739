"""What the explorer's page tests share: driving pages in the browser's own thread."""


def run_in_browser(pool, open_one):
    """``run(body)``: ``body(open_page)`` in the browser's thread ``pool``, where ``open_page(...)``
    is ``open_one(...)`` (a page object with ``.page`` and ``.problems``); afterwards every page
    opened must have stayed clean, and all are closed."""
    def run(body) -> None:
        def work() -> None:
            pages = []

            def open_page(*args, **kwargs):
                pages.append(open_one(*args, **kwargs))
                return pages[-1]

            try:
                body(open_page)
                for page in pages:
                    assert page.problems == []
            finally:
                for page in pages:
                    page.page.close()

        pool.submit(work).result()

    return run
