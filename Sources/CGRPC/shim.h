#ifndef P11KMS_CGRPC_SHIM_H
#define P11KMS_CGRPC_SHIM_H
/* <grpc/impl/codegen/port_platform.h> defines _GNU_SOURCE before it includes libc headers, which
   changes libc's struct layouts (fd_set's field becomes fds_bits) and makes this module clash with
   Swift's Glibc module when both are imported. Including those libc headers first, with the
   default feature macros, keeps the definitions identical. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/select.h>
#include <sys/time.h>
#include <time.h>
#include <pthread.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <grpc/support/log.h>
#endif
