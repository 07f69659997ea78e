#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver, entered from each target's main. SwiftPM names an executable's entry point
// <Target>_main and points `main` at it, so libFuzzer's own main() is not linked; the target calls this instead.
int p11kms_fuzz_run(int argc, char **argv, int (*test_one_input)(const uint8_t *data, size_t size));
