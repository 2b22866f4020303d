"""The dashboard's page errors. Raised by the authentication layer and the routes, turned into a
303 to ``/login``, an HTML 404 or an HTML 403 by :class:`vr3ai.web.render.WebRoute`; a module of
their own so that ``auth`` (which raises them) and ``render`` (which uses ``auth``) form no cycle."""


class LoginRequired(Exception):
    pass


class PageNotFound(Exception):
    def __init__(self, what: str = "page") -> None:
        super().__init__(what)
        self.what = what


class CsrfFailed(Exception):
    pass
