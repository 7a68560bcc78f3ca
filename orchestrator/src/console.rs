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
        let gzip = accepts_gzip(request.headers());
        let response = answer(request.method(), request.uri().path(), gzip);
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

/// Whether the client takes gzip-encoded answers (`Accept-Encoding: gzip`, not `;q=0`).
fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let gzip = parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("gzip"));
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            gzip && !refused
        })
}

/// What the console is made of, for a request that is not for the API.
#[derive(Debug, PartialEq, Eq)]
struct Asset {
    status: StatusCode,
    content_type: &'static str,
    cache_control: &'static str,
    body: &'static [u8],
    /// Whether there is a gzip form of the file (`NAME.gz`, written by the build): the answer
    /// varies by `Accept-Encoding`, and `body` is that form when the client takes it.
    gzip: Option<bool>,
}

fn answer(method: &Method, path: &str, gzip: bool) -> Response<tonic::body::Body> {
    let asset = lookup(ASSETS, method, path, gzip);
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
    if let Some(encoded) = asset.gzip {
        headers.insert(
            http::header::VARY,
            HeaderValue::from_static("accept-encoding"),
        );
        if encoded {
            headers.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("gzip"),
            );
        }
    }
    if asset.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// The answer to `method path` from `assets`: the file itself (its gzip form for a client that
/// takes `gzip`, when there is one); `index.html` for a path without an extension (one of the
/// console's routes, such as `/runs/ID`); 404 otherwise.
fn lookup(
    assets: &'static [(&'static str, &'static [u8])],
    method: &Method,
    path: &str,
    gzip: bool,
) -> Asset {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return Asset {
            status: StatusCode::METHOD_NOT_ALLOWED,
            content_type: TEXT,
            cache_control: "no-store",
            body: b"only GET and HEAD are served here; the API is gRPC\n",
            gzip: None,
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
        let encoded = find(&format!("{name}.gz"));
        let (body, gzip) = match encoded {
            Some(encoded) if gzip => (encoded, Some(true)),
            Some(_) => (body, Some(false)),
            None => (body, None),
        };
        return Asset {
            gzip,
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
            gzip: None,
        },
        Some(_) => Asset {
            status: StatusCode::NOT_FOUND,
            content_type: TEXT,
            cache_control: "no-cache",
            body: b"not found\n",
            gzip: None,
        },
        None => Asset {
            status: StatusCode::NOT_FOUND,
            content_type: TEXT,
            cache_control: "no-cache",
            body: b"the console was not built into this binary (scripts/build-web.sh)\n",
            gzip: None,
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
        ("assets/index-abc123.js.gz", b"gz"),
        ("favicon.svg", b"<svg/>"),
        ("index.html", b"<html>"),
    ];

    #[test]
    fn files_routes_and_missing_files() {
        let js = lookup(SITE, &Method::GET, "/assets/index-abc123.js", false);
        assert_eq!(js.status, StatusCode::OK);
        assert_eq!(js.content_type, "text/javascript; charset=utf-8");
        assert!(js.cache_control.contains("immutable"));
        assert_eq!(js.body, b"js");
        assert_eq!(js.gzip, Some(false));
        let gz = lookup(SITE, &Method::GET, "/assets/index-abc123.js", true);
        assert_eq!((gz.body, gz.gzip), (&b"gz"[..], Some(true)));
        assert_eq!(gz.content_type, "text/javascript; charset=utf-8");

        for route in ["/", "/runs", "/runs/0193-abc", "/flows/hello/2"] {
            let page = lookup(SITE, &Method::GET, route, true);
            assert_eq!(page.status, StatusCode::OK, "{route}");
            assert_eq!(page.body, b"<html>", "{route}");
            assert_eq!(page.cache_control, "no-cache", "{route}");
        }
        assert_eq!(
            lookup(SITE, &Method::GET, "/favicon.svg", true).content_type,
            "image/svg+xml"
        );
        assert_eq!(
            lookup(SITE, &Method::GET, "/assets/gone-123.js", true).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            lookup(SITE, &Method::POST, "/", true).status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            lookup(&[], &Method::GET, "/", true).status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn gzip_when_the_client_takes_it() {
        let with = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static(value),
            );
            accepts_gzip(&headers)
        };
        assert!(with("gzip, deflate, br, zstd"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(!with("gzip;q=0"));
        assert!(!with("gzip; q=0.000, br"));
        assert!(!with("br, deflate"));
        assert!(!with("x-gzip-ish"));
        assert!(!accepts_gzip(&http::HeaderMap::new()));
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
