// The page: the API (FastAPI, at /api) lists and adds todos; the channel `todos` brings the
// ones added anywhere, as they are added.
const list = document.getElementById("todos");
const shown = new Set();

function show(todo) {
  if (shown.has(todo.id)) return;
  shown.add(todo.id);
  const item = document.createElement("li");
  item.textContent = todo.text;
  list.append(item);
}

const rt = new Rtserve();
rt.on("state", (state) => { document.getElementById("status").textContent = state; });
rt.subscribe("todos", { onPublication: (pub) => show(pub.data) });
rt.connect();

fetch("/api/todos").then((r) => r.json()).then((todos) => todos.forEach(show));

document.getElementById("add").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  const response = await fetch("/api/todos", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text: input.value }),
  });
  if (response.ok) input.value = "";
});
