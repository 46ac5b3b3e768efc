// accessgov console: the little behaviour the pages have beyond links and forms.
// Served as a file (the Content-Security-Policy allows no inline script).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Times are written in UTC; the tooltip gives the reader's local time.
  for (const t of document.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!Number.isNaN(d.getTime())) {
      t.title = d.toLocaleString();
    }
  }
  // Filters: a changed select submits its form (the Search button still works without script).
  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }
});
