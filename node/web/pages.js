// What the node's pages share: the API token (kept for the tab only), requests that
// carry it and the same-origin header, and small DOM helpers that set text, never HTML.
"use strict";
function token() { return sessionStorage.getItem("ainode-token") || ""; }
function apiHeaders(extra) {
  const headers = { "X-AINode-Request": "1", ...(extra || {}) };
  if (token()) headers.Authorization = "Bearer " + token();
  return headers;
}
async function fetched(path, options) {
  const response = await fetch(path, { headers: apiHeaders(), ...(options || {}) });
  if (response.status === 401) { document.getElementById("login").style.display = "block"; throw new Error("token required"); }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response;
}
function element(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (className) e.className = className;
  return e;
}
function row(table, cells, className) {
  const tr = table.querySelector("tbody").insertRow();
  if (className) tr.className = className;
  for (const c of cells) { const td = tr.insertCell(); if (c instanceof Node) td.appendChild(c); else td.textContent = c; }
  return tr;
}
