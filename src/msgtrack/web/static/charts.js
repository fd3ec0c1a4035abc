// Draws each <canvas data-chart> from the table it names, so the numbers in the
// chart are exactly those of the (accessible) table under it.
//
//   data-chart="bar|line|doughnut"   the chart type
//   data-table="ID"                  the <table> holding the numbers
//   data-columns="1,2"               the columns drawn, one series each (doughnut: the first)
//   data-label-column="0"            the column of the labels (default 0)
//   data-stacked="true"              stack the bar series
//   data-percent="true"              a 0-100 % axis
"use strict";
(function () {
  var palette = ["#2f6fae", "#d9822b", "#3a9a5b", "#a23b72", "#6c757d", "#c9a227", "#17a2b8"];
  function number(text) { var n = parseFloat(text); return isNaN(n) ? 0 : n; }
  function draw(canvas) {
    var table = document.getElementById(canvas.dataset.table);
    if (!table || !table.tHead || typeof Chart === "undefined") { return; }
    var type = canvas.dataset.chart;
    var heads = table.tHead.rows[0].cells;
    var columns = canvas.dataset.columns.split(",").map(Number);
    var labelColumn = Number(canvas.dataset.labelColumn || 0);
    var stacked = canvas.dataset.stacked === "true";
    var percent = canvas.dataset.percent === "true";
    var rows = Array.prototype.filter.call(table.tBodies[0].rows, function (r) {
      return r.cells.length === heads.length;
    });
    var labels = rows.map(function (r) { return r.cells[labelColumn].textContent.trim(); });
    var round = type === "doughnut";
    if (round) { columns = columns.slice(0, 1); }
    var datasets = columns.map(function (c, i) {
      var color = round ? labels.map(function (_, j) { return palette[j % palette.length]; })
                        : palette[i % palette.length];
      return {
        label: heads[c].textContent.trim(),
        data: rows.map(function (r) { return number(r.cells[c].textContent); }),
        backgroundColor: color,
        borderColor: round ? "#fff" : color,
        borderWidth: type === "line" ? 2 : 1,
        pointRadius: type === "line" && rows.length > 60 ? 0 : 2,
        tension: 0.2,
        fill: false
      };
    });
    var options = {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: round ? "nearest" : "index", intersect: round },
      plugins: { legend: { position: round ? "right" : "top" } }
    };
    if (!round) {
      var y = { beginAtZero: true, stacked: stacked, ticks: { precision: percent ? 1 : 0 } };
      if (percent) { y.max = 100; }
      options.scales = { x: { stacked: stacked, ticks: { autoSkip: true, maxRotation: 45 } }, y: y };
    }
    new Chart(canvas, { type: type, data: { labels: labels, datasets: datasets }, options: options });
  }
  document.querySelectorAll("canvas[data-chart]").forEach(draw);
})();
