#!/usr/bin/env python3
"""A small web application a clerk works in, for examples/web-form.yaml.

    python3 examples/web-form/app.py [--port 8788]

GET  /login         a login form (user `clerk`, password `demo`)
POST /login         sets a session cookie and sends the browser to /order
GET  /order         the order form (needs the session): customer, product, quantity
POST /order         records the order and shows its confirmation number
GET  /orders.json   the orders recorded so far
Standard library only; keeps everything in memory. Prints the port it serves on.
"""
import argparse
import html
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

USERS = {"clerk": "demo"}
PRODUCTS = {"widget": "Widget", "gadget": "Gadget", "gizmo": "Gizmo"}
lock = threading.Lock()
sessions = set()
orders = []

PAGE = """<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>"""


class App(BaseHTTPRequestHandler):
    def _page(self, status, title, body, headers=()):
        data = PAGE.format(title=html.escape(title), body=body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _form(self):
        length = int(self.headers.get("Content-Length") or 0)
        return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

    def _logged_in(self):
        cookie = self.headers.get("Cookie") or ""
        with lock:
            return any(part.strip().startswith("session=") and part.strip()[8:] in sessions for part in cookie.split(";"))

    def do_GET(self):
        if self.path == "/login":
            return self._page(200, "Sign in", """<form method="post" action="/login">
<label>User <input id="username" name="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="login" type="submit">Sign in</button></form>""")
        if self.path == "/order":
            if not self._logged_in():
                return self._page(303, "Sign in", "", [("Location", "/login")])
            options = "".join(f'<option value="{k}">{v}</option>' for k, v in PRODUCTS.items())
            return self._page(200, "New order", f"""<form id="order-form" method="post" action="/order">
<label>Customer <input id="customer" name="customer"></label>
<label>Product <select id="product" name="product">{options}</select></label>
<label>Quantity <input id="quantity" name="quantity" type="number" min="1"></label>
<button id="submit" type="submit">Place order</button></form>""")
        if self.path == "/orders.json":
            with lock:
                data = json.dumps({"orders": orders}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        self._page(404, "Not found", "")

    def do_POST(self):
        form = self._form()
        if self.path == "/login":
            if USERS.get(form.get("username")) != form.get("password"):
                return self._page(401, "Sign in", '<p id="error">Wrong user or password</p>')
            token = secrets.token_hex(16)
            with lock:
                sessions.add(token)
            return self._page(303, "Signed in", "", [("Location", "/order"), ("Set-Cookie", f"session={token}; Path=/")])
        if self.path == "/order":
            if not self._logged_in():
                return self._page(401, "Sign in", '<p id="error">Sign in first</p>')
            try:
                quantity = int(form.get("quantity", ""))
            except ValueError:
                return self._page(400, "New order", '<p id="error">Quantity must be a number</p>')
            if not form.get("customer") or form.get("product") not in PRODUCTS or quantity < 1:
                return self._page(400, "New order", '<p id="error">Fill in every field</p>')
            with lock:
                confirmation = f"WF-{1001 + len(orders)}"
                orders.append({"confirmation": confirmation, "customer": form["customer"], "product": form["product"], "quantity": quantity})
            return self._page(200, "Order placed", f'<p>Confirmation number: <span id="confirmation">{confirmation}</span></p>')
        self._page(404, "Not found", "")

    def log_message(self, fmt, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8788)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), App)
    print(f"web form app on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
