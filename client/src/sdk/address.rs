//! What the SDK accepts where an address is expected: a parsed
//! [`ClientAddress`] or its text.

use loopmix_core::e2e::ClientAddress;

use super::Error;

/// A loopmix address, or text to parse as one
/// (`identity.encryption@provider`, as `loopmix-client address` prints).
/// Text that does not parse is [`Error::BadAddress`].
pub trait ToAddress {
    /// The address, or why this is not one.
    fn to_address(&self) -> Result<ClientAddress, Error>;
}

impl ToAddress for ClientAddress {
    fn to_address(&self) -> Result<ClientAddress, Error> {
        Ok(*self)
    }
}

impl ToAddress for str {
    fn to_address(&self) -> Result<ClientAddress, Error> {
        Ok(self.trim().parse()?)
    }
}

impl ToAddress for String {
    fn to_address(&self) -> Result<ClientAddress, Error> {
        self.as_str().to_address()
    }
}

impl<T: ToAddress + ?Sized> ToAddress for &T {
    fn to_address(&self) -> Result<ClientAddress, Error> {
        (**self).to_address()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_an_address_is_a_typed_error() {
        for bad in ["", "nobody", "a.b@c", "x@y@z"] {
            assert!(
                matches!(bad.to_address(), Err(Error::BadAddress(_))),
                "{bad}"
            );
        }
    }
}
