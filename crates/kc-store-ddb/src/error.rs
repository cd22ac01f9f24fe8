//! Classification of DynamoDB SDK errors into [`kc_checkpoint::Error`]s.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use kc_checkpoint::{Error, ErrorKind};

/// Wraps an SDK error of the call described by `what` ("writing checkpoint of X to table T"), with a kind from its
/// error code and HTTP status. The SDK error is the `source()`.
pub(crate) fn from_sdk<E>(what: &str, err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, detail) = match &err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("unknown error code");
            let kind = classify(ctx.err().code(), Some(ctx.raw().status().as_u16()));
            let detail = match ctx.err().code() {
                Some("ResourceNotFoundException") => format!(
                    "{code}: the table does not exist; create it, e.g. with create_table_if_missing of \
                     DynamoDbStore or DynamoDbLeaseTable"
                ),
                _ => match ctx.err().message() {
                    Some(message) => format!("{code}: {message}"),
                    None => code.to_owned(),
                },
            };
            (kind, detail)
        }
        SdkError::TimeoutError(_) => (ErrorKind::Transient, "timed out".to_owned()),
        SdkError::DispatchFailure(_) => (ErrorKind::Transient, "could not send the request".to_owned()),
        SdkError::ResponseError(_) => (ErrorKind::Transient, "could not read the response".to_owned()),
        _ => (ErrorKind::Permanent, "could not build the request".to_owned()),
    };
    Error::with_source(kind, format!("{what}: {detail}"), err)
}

/// The kind of a DynamoDB error code and HTTP status. Unknown codes are permanent unless the status is 5xx or 429.
pub(crate) fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    match code {
        Some(
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "Throttling"
            | "RequestLimitExceeded"
            | "LimitExceededException"
            | "TransactionConflictException"
            | "InternalServerError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "RequestTimeout"
            | "RequestTimeoutException",
        ) => ErrorKind::Transient,
        _ if status.is_some_and(|s| s >= 500 || s == 429) => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases = [
            (Some("ProvisionedThroughputExceededException"), Some(400), ErrorKind::Transient),
            (Some("ThrottlingException"), Some(400), ErrorKind::Transient),
            (Some("RequestLimitExceeded"), Some(400), ErrorKind::Transient),
            (Some("InternalServerError"), Some(500), ErrorKind::Transient),
            (Some("SomethingNew"), Some(503), ErrorKind::Transient),
            (None, Some(502), ErrorKind::Transient),
            (None, Some(429), ErrorKind::Transient),
            (Some("ResourceNotFoundException"), Some(400), ErrorKind::Permanent),
            (Some("AccessDeniedException"), Some(400), ErrorKind::Permanent),
            (Some("ValidationException"), Some(400), ErrorKind::Permanent),
            (Some("UnrecognizedClientException"), Some(400), ErrorKind::Permanent),
            (None, Some(400), ErrorKind::Permanent),
            (None, None, ErrorKind::Permanent),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify(code, status), want, "{code:?} {status:?}");
        }
    }
}
