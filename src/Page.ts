/** The live results page of one poll: question, a button per option, bars fed by the results stream. */
export const render = (pollId: string): string => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>livepoll: ${pollId}</title>
</head>
<body>
<main>
<h1 id="question">Poll ${pollId}</h1>
<div id="options"></div>
<p id="status" role="status" aria-live="polite"></p>
</main>
<script>
const pollId = ${JSON.stringify(pollId)};
const options = document.getElementById("options");
const status = document.getElementById("status");
function draw(data) {
  if (data.question) document.getElementById("question").textContent = data.question;
  const list = data.options || Object.keys(data.results).map((id) => ({ id, label: id, votes: data.results[id] }));
  const total = list.reduce((n, o) => n + o.votes, 0) || 1;
  options.replaceChildren(...list.map((o) => {
    const row = document.createElement("div");
    const button = document.createElement("button");
    button.textContent = o.label;
    button.onclick = () => vote(o.id);
    const bar = document.createElement("meter");
    bar.max = total; bar.value = o.votes;
    const count = document.createElement("span");
    count.className = "count"; count.dataset.option = o.id; count.textContent = String(o.votes);
    row.append(button, bar, count);
    return row;
  }));
}
async function vote(optionId) {
  const r = await fetch("/api/v1/vote/" + encodeURIComponent(pollId), { method: "POST", body: JSON.stringify({ option_id: optionId }) });
  const body = await r.json();
  status.textContent = r.ok ? "Vote counted" : body.message;
}
new EventSource("/api/v1/polls/" + encodeURIComponent(pollId) + "/stream").addEventListener("results", (e) => draw(JSON.parse(e.data)));
</script>
</body>
</html>
`
