"""rtserve app for bench/http.py: the full router and handler path.

Run (from the repo root):
    python -m rtserve run bench.apps.rtserve_app:app --host 127.0.0.1 --port 8000 \
        --no-access-log --no-reload
"""

from rtserve import App, Request

app = App()


@app.route("/plaintext")
def plaintext(request: Request) -> str:
    return "Hello, World!"


@app.route("/json/{id:int}")
def item(request: Request, id: int) -> dict[str, object]:
    return {"id": id, "message": "Hello, World!"}


# The same answers from `async def` handlers, what most users write (the *-async rows).
@app.route("/async/plaintext")
async def plaintext_async(request: Request) -> str:
    return "Hello, World!"


@app.route("/async/json/{id:int}")
async def item_async(request: Request, id: int) -> dict[str, object]:
    return {"id": id, "message": "Hello, World!"}
