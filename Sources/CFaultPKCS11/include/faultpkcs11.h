#ifndef P11KMS_FAULTPKCS11_H
#define P11KMS_FAULTPKCS11_H

/*
 * A fault-injecting PKCS#11 module for tests. It exports C_GetFunctionList, loads the real module named by
 * FAULTPKCS11_MODULE (default /usr/lib/softhsm/libsofthsm2.so) and forwards every function to it, after
 * consulting the fault plan in the file named by FAULTPKCS11_CONTROL. See faultpkcs11.c for the plan syntax.
 */

/* Calls of `function` (e.g. "C_Login") made through this module in this process, or 0 for an unknown name. */
unsigned long FaultPKCS11_CallCount(const char *function);

#endif
