#ifndef P11KMS_CGRPC_SHIM_H
#define P11KMS_CGRPC_SHIM_H
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <grpc/support/log.h>
#endif
