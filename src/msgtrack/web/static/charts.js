// Draws each <canvas data-chart> from the table it names, so the numbers in the
// chart are exactly those of the (accessible) table under it.
"use strict";
(function () {
  var palette = ["#2f6fae", "#d9822b", "#3a9a5b", "#a23b72", "#6c757d"];
  function number(text) { var n = parseFloat(text); return isNaN(n) ? 0 : n; }
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var table = document.getElementById(canvas.dataset.table);
    if (!table || typeof Chart === "undefined") { return; }
    var heads = table.tHead.rows[0].cells;
    var columns = canvas.dataset.columns.split(",").map(Number);
    var rows = Array.prototype.filter.call(table.tBodies[0].rows, function (r) {
      return r.cells.length === heads.length;
    });
    var labels = rows.map(function (r) { return r.cells[0].textContent; });
    var datasets = columns.map(function (c, i) {
      return {
        label: heads[c].textContent,
        data: rows.map(function (r) { return number(r.cells[c].textContent); }),
        backgroundColor: palette[i % palette.length]
      };
    });
    new Chart(canvas, {
      type: canvas.dataset.chart,
      data: { labels: labels, datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } }
      }
    });
  });
})();
