"""The report page's one script, inline (a page that fetches nothing; a .py, not a .js, so every
install of the package has it): zoom (mouse wheel, buttons) and pan (drag) of every graph drawing
through its ``viewBox``, open/close of grouped views, the before/after columns, find a node.
It reads only the page's own DOM; no user string reaches it except through escaped attributes."""

NAVIGATE_JS = r"""
// The report's only script: open/close grouped views, zoom and pan every graph drawing,
// find a node. No network, no library. Runs once the page is parsed (it is the last element).
(function () {
  'use strict';
  var MIN_SCALE = 0.05, MAX_SCALE = 8, MAX_VIEW_H = 640;

  // ---------------------------------------------------------------- zoom and pan (viewBox)
  function natural(svg) { return {w: +svg.dataset.w, h: +svg.dataset.h}; }
  function setBox(svg, x, y, s) {
    var port = svg.parentNode, w = port.clientWidth || 600, h = +svg.getAttribute('height');
    svg.dataset.x = x; svg.dataset.y = y; svg.dataset.s = s;
    svg.setAttribute('viewBox', x + ' ' + y + ' ' + (w / s) + ' ' + (h / s));
  }
  function fit(svg) {
    var port = svg.parentNode, n = natural(svg), w = port.clientWidth;
    if (!w) return;  // hidden: fitted when its view opens
    var s = Math.min(1, w / n.w);
    svg.setAttribute('width', w);
    svg.setAttribute('height', Math.max(60, Math.min(MAX_VIEW_H, n.h * s)));
    setBox(svg, 0, 0, s);
  }
  function zoom(svg, factor, cx, cy) {  // cx, cy: the screen point that stays put
    var s = +svg.dataset.s, s2 = Math.max(MIN_SCALE, Math.min(MAX_SCALE, s * factor));
    var x = +svg.dataset.x + cx / s - cx / s2, y = +svg.dataset.y + cy / s - cy / s2;
    setBox(svg, x, y, s2);
  }
  var drag = null, dragged = false;
  document.addEventListener('wheel', function (ev) {
    var svg = ev.target.closest && ev.target.closest('svg.graph');
    if (!svg || !svg.dataset.s) return;
    ev.preventDefault();
    var r = svg.getBoundingClientRect();
    zoom(svg, Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
  }, {passive: false});
  document.addEventListener('pointerdown', function (ev) {
    var svg = ev.target.closest && ev.target.closest('svg.graph');
    if (!svg || !svg.dataset.s || ev.button !== 0) return;
    drag = {svg: svg, x: ev.clientX, y: ev.clientY, bx: +svg.dataset.x, by: +svg.dataset.y};
    dragged = false;
  });
  document.addEventListener('pointermove', function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y, s = +drag.svg.dataset.s;
    if (Math.abs(dx) + Math.abs(dy) > 3) { dragged = true; drag.svg.classList.add('panning'); }
    if (dragged) setBox(drag.svg, drag.bx - dx / s, drag.by - dy / s, s);
  });
  document.addEventListener('pointerup', function () {
    if (drag) drag.svg.classList.remove('panning');
    drag = null;
  });

  // ---------------------------------------------------------------- grouped views
  function views() { return document.querySelectorAll('section.view'); }
  function setOpen(gid, open) {
    var sec = document.getElementById('view-' + gid); if (!sec) return;
    sec.hidden = !open;
    var box = document.getElementById(gid);
    if (box) { box.classList.toggle('open', open); box.setAttribute('aria-expanded', open ? 'true' : 'false'); }
    if (open) { sec.querySelectorAll(':scope > .viewport > svg.graph').forEach(fit); }
    else {  // closing a group closes what was opened inside it
      sec.querySelectorAll('g.group.open').forEach(function (g) { setOpen(g.getAttribute('data-group'), false); });
    }
  }
  function openChain(sec) {
    while (sec && sec.dataset.parent) {
      setOpen(sec.id.slice(5), true);
      sec = document.getElementById('view-' + sec.dataset.parent);
    }
  }
  function toggle(gid) {
    var sec = document.getElementById('view-' + gid); if (!sec) return;
    setOpen(gid, sec.hidden);
    if (!sec.hidden) sec.scrollIntoView({block: 'nearest'});
  }
  document.addEventListener('click', function (ev) {
    var t = ev.target;
    if (dragged) { dragged = false; return; }  // the end of a pan is not a click on a box
    var g = t.closest && t.closest('g.group'); if (g) { toggle(g.getAttribute('data-group')); return; }
    var act = t.getAttribute && t.getAttribute('data-action');
    var svg = act && document.getElementById(t.getAttribute('data-svg') || '');
    if (svg && act === 'zoom-in') zoom(svg, 1.25, svg.clientWidth / 2, svg.clientHeight / 2);
    if (svg && act === 'zoom-out') zoom(svg, 0.8, svg.clientWidth / 2, svg.clientHeight / 2);
    if (svg && act === 'fit') fit(svg);
    if (act === 'close') setOpen(t.getAttribute('data-view'), false);
    var scope = act && document.getElementById(t.getAttribute('data-scope') || 'graph-views');
    if (act === 'expand-all') scope.querySelectorAll('section.view').forEach(function (s) {
      if (s.dataset.parent) setOpen(s.id.slice(5), true); });
    if (act === 'collapse-all') scope.querySelectorAll('section.view').forEach(function (s) {
      if (s.dataset.parent) setOpen(s.id.slice(5), false); });
    if (act === 'compare') {
      var on = document.getElementById('graph-columns').classList.toggle('compare');
      t.setAttribute('aria-pressed', on ? 'true' : 'false');
      document.getElementById('captured-views').hidden = !on;
      document.querySelectorAll('section.view:not([hidden]) > .viewport > svg.graph').forEach(fit);
    }
  });
  document.addEventListener('keydown', function (ev) {
    var g = ev.target.closest && ev.target.closest('g.group');
    if (g && (ev.key === 'Enter' || ev.key === ' ')) { ev.preventDefault(); toggle(g.getAttribute('data-group')); }
  });
  var find = document.getElementById('find-node');
  if (find) {
    find.addEventListener('change', function () {
      document.querySelectorAll('g.node.hit').forEach(function (n) { n.classList.remove('hit'); });
      var el = document.getElementById('n-' + find.value.trim());
      if (!el) { find.setCustomValidity('no node named ' + find.value); find.reportValidity(); return; }
      find.setCustomValidity('');
      openChain(el.closest('section.view')); el.classList.add('hit'); el.scrollIntoView({block: 'center'});
    });
  }
  document.querySelectorAll('section.view:not([hidden]) > .viewport > svg.graph').forEach(fit);
  window.addEventListener('resize', function () {
    document.querySelectorAll('section.view:not([hidden]) > .viewport > svg.graph').forEach(fit);
  });
  document.body.setAttribute('data-graph-elements',
    String(document.querySelectorAll('#graph-views svg.graph g.node').length));
  document.body.setAttribute('data-ready', '1');
})();
"""
