"""A minimal rtserve app: a page, a JSON endpoint with a path parameter, static files."""

from pathlib import Path

from rtserve import App, Request

HERE = Path(__file__).parent
app = App()
app.static_file("/", HERE / "static" / "index.html")
app.static("/static", HERE / "static")


@app.route("/hello/{name}")
async def hello(request: Request, name: str) -> dict[str, str]:
    return {"hello": name, "client": request.client}
