//! [`ProtoCodec`]: prost's codec, except that a message that cannot be decoded is the caller's
//! mistake: `INVALID_ARGUMENT` naming the problem, where prost's codec answers `INTERNAL`.

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder};

/// The codec of every `rpaflow.v1` service and client.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// Decodes with prost and reports bytes that are not the expected message as
/// `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct ProtoDecoder<U: prost::Message + Default + Send + 'static> {
    inner: ProstDecoder<U>,
}

impl<U: prost::Message + Default + Send + 'static> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner
            .decode(src)
            .map_err(|status| match status.code() {
                Code::Internal => Status::invalid_argument(format!(
                    "the message is not a valid {}: {}",
                    std::any::type_name::<U>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("message"),
                    status.message()
                )),
                _ => status,
            })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
