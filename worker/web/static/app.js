// cost-worker dashboard: reload the page when what it shows changes (a sync starts or ends, a backfill
// finishes). Written for this package; no libraries. The page works without it (every action is a form).
"use strict";

(function () {
  const body = document.body;
  const url = body.dataset.watch;
  if (!url) {
    return;
  }

  function changed(answer) {
    if (Array.isArray(answer)) { // the overview: one card per integration
      const cards = document.querySelectorAll(".card[data-id]");
      if (cards.length !== answer.length) {
        return true;
      }
      const shown = new Map();
      cards.forEach(function (card) { shown.set(card.dataset.id, card.dataset.status); });
      return answer.some(function (i) { return shown.get(String(i.id)) !== i.status; });
    }
    const latest = answer.runs && answer.runs.length ? answer.runs[0] : null;
    return answer.status !== body.dataset.status
      || String(latest ? latest.id : "") !== body.dataset.run
      || (latest ? latest.outcome : "") !== body.dataset.outcome;
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (answer) {
        if (answer !== null && changed(answer)) {
          window.location.reload();
          return;
        }
        window.setTimeout(poll, 2000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }

  window.setTimeout(poll, 2000);
})();
