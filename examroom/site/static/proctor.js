"use strict";
// One video proctor's eight rooms, bigger: only the rooms chosen, in the order given.

const grid = tileGrid(document.getElementById("tiles"), boot.rooms);
document.getElementById("title").textContent = `视频巡查：${boot.title}`;
document.title = `视频巡查 ${boot.title}`;
startHeader();
connect({snapshot: (d) => grid.reset(d.rooms), update: (d) => (d.rooms || []).forEach(grid.put)});
