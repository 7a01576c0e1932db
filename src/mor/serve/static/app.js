"use strict";
// Live routing: POST /v1/route shows the decision at once, then POST /v1/chat/completions shows the answer.
// Everything the server sends is written with textContent, never parsed as HTML.

const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = sessionStorage.getItem("mor-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("mor-key", keyInput.value));

async function call(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (keyInput.value) headers.Authorization = `Bearer ${keyInput.value}`;
  const options = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(`${response.status}: ${data.error ? data.error.message : response.statusText}`);
  return data;
}

let chatModel = null;  // the service's chat model, from GET /v1/models on the first request

function cell(row, text) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  row.appendChild(td);
}

function showRouting(route) {
  $("experts").textContent = route.selected.join(", ");
  $("fallback").textContent = route.fallback ? `(fallback: ${route.reason})` : "";
  const top = Math.max(...route.scores.map((s) => Math.abs(s.total)), 1e-9);
  const rows = route.scores.map((s) => {
    const row = document.createElement("tr");
    if (route.selected.includes(s.name)) row.className = "chosen";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, 100 * s.total / top)}px`;
    [s.name, s.total.toFixed(3), bar, s.probability.toFixed(2), s.hints.toFixed(2), s.tools.toFixed(0),
     (s.feedback + 0.5).toFixed(2), `${Math.round(100 * s.load)}%`].forEach((v) => cell(row, v));
    return row;
  });
  $("scores").replaceChildren(...rows);
  $("explanation").textContent = route.explanation;
}

function showAnswer(completion) {
  const mor = completion.mor;
  $("answer").textContent = completion.choices[0].message.content || "";
  $("answered-by").textContent = mor.answered_by;
  $("confidence").textContent = mor.confidence.toFixed(2);
  $("steps").textContent = String(mor.steps);
  $("rounds").textContent = String(mor.rounds);
  $("cost").textContent = `${(1000 * mor.cost.latency_s).toFixed(1)} ms in experts`;
  $("answers").replaceChildren(...mor.answers.map((a) => {
    const item = document.createElement("li");
    item.textContent = a.error ? `${a.expert}: failed (${a.error})` :
      `${a.expert}: confidence ${a.confidence.toFixed(2)}, ${a.steps} step(s)`;
    if (a.error) item.className = "failed";
    return item;
  }));
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const messages = [{ role: "user", content: $("question").value }];
  $("status").textContent = "routing…";
  $("ask").disabled = true;
  try {
    showRouting(await call("/v1/route", { messages }));
    $("status").textContent = "asking the experts…";
    chatModel = chatModel || (await call("/v1/models")).data.find((m) => m.kind === "chat").id;
    showAnswer(await call("/v1/chat/completions", { model: chatModel, messages }));
    $("status").textContent = "";
  } catch (error) {
    $("status").textContent = error.message;
  } finally {
    $("ask").disabled = false;
  }
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("form").requestSubmit();
});
