#ifndef P11KMS_CPKCS11_SHIM_H
#define P11KMS_CPKCS11_SHIM_H
#include <dlfcn.h>
#include <p11-kit-1/p11-kit/pkcs11.h>
#endif
