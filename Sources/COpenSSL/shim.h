// libcrypto (OpenSSL 3, Debian's libssl-dev): PBKDF2-HMAC-SHA256 and the system's random bytes for the record of
// a rejected PIN.
#include <openssl/evp.h>
#include <openssl/rand.h>
