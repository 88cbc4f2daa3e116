// Sortable columns and a row filter for the tables marked "sortable"; no library, no network.
(() => {
  const value = (row, col) => {
    const cell = row.cells[col];
    if (!("v" in cell.dataset)) return cell.textContent.trim().toLowerCase();
    return cell.dataset.v === "" ? null : Number(cell.dataset.v);
  };
  for (const table of document.querySelectorAll("table.sortable")) {
    const body = table.tBodies[0];
    const heads = [...table.tHead.rows[0].cells];
    heads.forEach((head, col) => {
      head.querySelector("button").addEventListener("click", () => {
        const ascending = head.getAttribute("aria-sort") !== "ascending";
        heads.forEach((h) => h.removeAttribute("aria-sort"));
        head.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const rows = [...body.rows].sort((a, b) => {
          const x = value(a, col), y = value(b, col);
          if (x === null || y === null) return (x === null) - (y === null); // unknown last
          const order = x < y ? -1 : x > y ? 1 : 0;
          return ascending ? order : -order;
        });
        body.append(...rows);
      });
    });
    const filter = document.querySelector(`input[data-filters="${table.id}"]`);
    const count = document.querySelector(`[data-counts="${table.id}"]`);
    if (!filter) continue;
    filter.addEventListener("input", () => {
      const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
      let shown = 0;
      for (const row of body.rows) {
        const text = row.textContent.toLowerCase();
        row.hidden = !words.every((w) => text.includes(w));
        shown += !row.hidden;
      }
      count.textContent = `${shown} of ${body.rows.length} rows`;
    });
  }
})();
