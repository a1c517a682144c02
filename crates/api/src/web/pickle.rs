//! The argument of a web call: `((scope,), {})` in pickle, the format the container's input
//! loop unpacks into `fn(*args, **kwargs)`. Only the few Python types a scope holds are written
//! (str, bytes, int, tuple, list, dict), with opcodes every Python 3 reads (protocol 2, plus
//! protocol 3's BINBYTES).

use ferry_gateway::{RequestHead, RequestKind};

enum Py {
    Str(String),
    Bytes(Vec<u8>),
    Int(i64),
    Tuple(Vec<Py>),
    List(Vec<Py>),
    Dict(Vec<(&'static str, Py)>),
}

fn write(v: &Py, out: &mut Vec<u8>) {
    match v {
        Py::Str(s) => {
            out.push(b'X'); // BINUNICODE
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Py::Bytes(b) => {
            out.push(b'B'); // BINBYTES
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        Py::Int(i) => match i32::try_from(*i) {
            Ok(small) => {
                out.push(b'J'); // BININT
                out.extend_from_slice(&small.to_le_bytes());
            }
            Err(_) => {
                out.push(0x8a); // LONG1: little-endian two's complement
                out.push(8);
                out.extend_from_slice(&i.to_le_bytes());
            }
        },
        Py::Tuple(items) => {
            out.push(b'('); // MARK
            for item in items {
                write(item, out);
            }
            out.push(b't'); // TUPLE
        }
        Py::List(items) => {
            out.push(b']'); // EMPTY_LIST
            if !items.is_empty() {
                out.push(b'(');
                for item in items {
                    write(item, out);
                }
                out.push(b'e'); // APPENDS
            }
        }
        Py::Dict(items) => {
            out.push(b'}'); // EMPTY_DICT
            if !items.is_empty() {
                out.push(b'(');
                for (k, v) in items {
                    write(&Py::Str(k.to_string()), out);
                    write(v, out);
                }
                out.push(b'u'); // SETITEMS
            }
        }
    }
}

fn dumps(v: &Py) -> Vec<u8> {
    let mut out = vec![0x80, 2]; // PROTO 2
    write(v, &mut out);
    out.push(b'.'); // STOP
    out
}

/// The pickled `((scope,), {})` of a request.
pub(super) fn asgi_args(head: &RequestHead) -> Vec<u8> {
    let headers = head
        .headers
        .iter()
        .map(|(n, v)| Py::Tuple(vec![Py::Bytes(n.clone()), Py::Bytes(v.clone())]))
        .collect();
    let mut scope = vec![
        ("type", Py::Str(match head.kind {
            RequestKind::Http => "http",
            RequestKind::WebSocket { .. } => "websocket",
        }.into())),
        ("asgi", Py::Dict(vec![("version", Py::Str("3.0".into())), ("spec_version", Py::Str("2.3".into()))])),
        ("http_version", Py::Str(head.http_version.clone())),
        ("scheme", Py::Str(head.scheme.clone())),
        ("path", Py::Str(head.path.clone())),
        ("root_path", Py::Str(head.root_path.clone())),
        ("query_string", Py::Bytes(head.query_string.clone())),
        ("headers", Py::List(headers)),
    ];
    if let RequestKind::WebSocket { subprotocols } = &head.kind {
        scope.push(("subprotocols", Py::List(subprotocols.iter().map(|p| Py::Str(p.clone())).collect())));
    } else {
        scope.push(("method", Py::Str(head.method.clone())));
        scope.push(("extensions", Py::Dict(vec![("http.response.trailers", Py::Dict(vec![]))])));
    }
    if let Some(client) = head.client {
        scope.push(("client", Py::Tuple(vec![Py::Str(client.ip().to_string()), Py::Int(client.port() as i64)])));
    }
    dumps(&Py::Tuple(vec![Py::Tuple(vec![Py::Dict(scope)]), Py::Dict(vec![])]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes() {
        // pickle.loads(b'\x80\x02(X\x01\x00\x00\x00aJ\x05\x00\x00\x00t.') == ('a', 5)
        assert_eq!(dumps(&Py::Tuple(vec![Py::Str("a".into()), Py::Int(5)])), b"\x80\x02(X\x01\x00\x00\x00aJ\x05\x00\x00\x00t.");
        assert_eq!(dumps(&Py::Dict(vec![])), b"\x80\x02}.");
        assert_eq!(dumps(&Py::List(vec![Py::Bytes(b"x".to_vec())])), b"\x80\x02](B\x01\x00\x00\x00xe.");
    }
}
