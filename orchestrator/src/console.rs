//! The web console's static assets, served on the gRPC port for every request that is not gRPC
//! or gRPC-Web (docs/console.md).
//!
//! The console is a single-page application built from `web/` (Vite, TypeScript) into
//! `web/dist`, which is committed and embedded in the binary by `build.rs`: serving it needs no
//! Node.js, and building the orchestrator needs no npm. It calls the API through gRPC-Web on the
//! same origin, so the API's authentication applies to it unchanged, and the assets themselves
//! hold no data: they are served to anyone, like a login page.
//!
//! [`ConsoleLayer`] sits outermost in the server's stack: a request whose `content-type` is
//! `application/grpc*` (gRPC, gRPC-Web) goes on to the API; any other is answered here:
//! `GET`/`HEAD` of an asset, `index.html` for the console's own routes (`/runs/...`), 404 for a
//! missing file, 405 for other methods.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};

/// The files of `web/dist`: (path relative to it, contents), sorted by path.
static ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Scripts, styles and images come only from the console itself; nothing may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The tower layer that answers the console's requests before they reach the API.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleLayer;

impl<S> tower_layer::Layer<S> for ConsoleLayer {
    type Service = Console<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Console { inner }
    }
}

/// The service [`ConsoleLayer`] makes.
#[derive(Debug, Clone)]
pub struct Console<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> tower_service::Service<Request<B>> for Console<S>
where
    S: tower_service::Service<Request<B>, Response = Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_grpc(request.headers()) {
            return Box::pin(self.inner.call(request));
        }
        let response = answer(request.method(), request.uri().path());
        Box::pin(async move { Ok(response) })
    }
}

/// Whether a request is for the API: gRPC (`application/grpc`, `application/grpc+proto`) or
/// gRPC-Web (`application/grpc-web`, `application/grpc-web-text`, ...).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// What the console is made of, for a request that is not for the API.
#[derive(Debug, PartialEq, Eq)]
struct Asset {
    status: StatusCode,
    content_type: &'static str,
    cache_control: &'static str,
    body: &'static [u8],
}

fn answer(method: &Method, path: &str) -> Response<tonic::body::Body> {
    let asset = lookup(ASSETS, method, path);
    let head = method == Method::HEAD;
    let mut response = Response::new(if head || asset.body.is_empty() {
        tonic::body::Body::empty()
    } else {
        tonic::body::Body::new(axum::body::Body::from(asset.body))
    });
    *response.status_mut() = asset.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(asset.cache_control));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    if asset.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// The answer to `method path` from `assets`: the file itself; `index.html` for a path without
/// an extension (one of the console's routes, such as `/runs/ID`); 404 otherwise.
fn lookup(assets: &'static [(&'static str, &'static [u8])], method: &Method, path: &str) -> Asset {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return Asset {
            status: StatusCode::METHOD_NOT_ALLOWED,
            content_type: TEXT,
            cache_control: "no-store",
            body: b"only GET and HEAD are served here; the API is gRPC\n",
        };
    }
    let find = |name: &str| {
        assets
            .binary_search_by(|(path, _)| (*path).cmp(name))
            .ok()
            .map(|i| assets[i].1)
    };
    let name = path.trim_start_matches('/');
    if let Some(body) = find(name).filter(|_| !name.is_empty()) {
        return Asset {
            status: StatusCode::OK,
            content_type: content_type(name),
            // Vite names what it builds under assets/ by a hash of its contents.
            cache_control: if name.starts_with("assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
            body,
        };
    }
    let last = name.rsplit('/').next().unwrap_or_default();
    let is_route = !last.contains('.');
    match find("index.html") {
        Some(body) if is_route => Asset {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            cache_control: "no-cache",
            body,
        },
        Some(_) => Asset {
            status: StatusCode::NOT_FOUND,
            content_type: TEXT,
            cache_control: "no-cache",
            body: b"not found\n",
        },
        None => Asset {
            status: StatusCode::NOT_FOUND,
            content_type: TEXT,
            cache_control: "no-cache",
            body: b"the console was not built into this binary (scripts/build-web.sh)\n",
        },
    }
}

/// The `content-type` of a file Vite builds, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SITE: &[(&str, &[u8])] = &[
        ("assets/index-abc123.js", b"js"),
        ("favicon.svg", b"<svg/>"),
        ("index.html", b"<html>"),
    ];

    #[test]
    fn files_routes_and_missing_files() {
        let js = lookup(SITE, &Method::GET, "/assets/index-abc123.js");
        assert_eq!(js.status, StatusCode::OK);
        assert_eq!(js.content_type, "text/javascript; charset=utf-8");
        assert!(js.cache_control.contains("immutable"));
        assert_eq!(js.body, b"js");

        for route in ["/", "/runs", "/runs/0193-abc", "/flows/hello/2"] {
            let page = lookup(SITE, &Method::GET, route);
            assert_eq!(page.status, StatusCode::OK, "{route}");
            assert_eq!(page.body, b"<html>", "{route}");
            assert_eq!(page.cache_control, "no-cache", "{route}");
        }
        assert_eq!(
            lookup(SITE, &Method::GET, "/favicon.svg").content_type,
            "image/svg+xml"
        );
        assert_eq!(
            lookup(SITE, &Method::GET, "/assets/gone-123.js").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            lookup(SITE, &Method::POST, "/").status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(lookup(&[], &Method::GET, "/").status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn grpc_and_grpc_web_go_to_the_api() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_grpc(&headers));
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web+proto",
            "application/grpc-web-text",
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert!(is_grpc(&headers), "{ct}");
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert!(!is_grpc(&headers));
    }
}
