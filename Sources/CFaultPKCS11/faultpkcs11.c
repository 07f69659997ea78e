/*
 * faultpkcs11: a PKCS#11 module that forwards every call to a real module and injects faults on request.
 *
 * Environment (read once, when the module is first used):
 *   FAULTPKCS11_MODULE   the real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   FAULTPKCS11_CONTROL  the fault plan file (unset or missing file: pass everything through)
 *   FAULTPKCS11_LOG      if set, one line "<pid> <FUNCTION> 0x<rv>" is appended per call (one write(2) each)
 *
 * Fault plan, one rule per line; '#' starts a comment; the file is re-read whenever its inode, size, mtime or ctime
 * changes (checked with one stat(2) per call). Counts are per process and start again when the file is re-read.
 *   fail  <FUNCTION|*> <CKR_NAME|0xHEX> [count] [leave-active]
 *                                                  fail the next `count` calls (default: every call) with that CK_RV
 *   delay <FUNCTION|*> <milliseconds>              sleep before forwarding each call
 * `*` matches every function except C_GetFunctionList and C_Finalize. The first fail rule that matches and has calls
 * left wins; delays add up.
 *
 * Injected faults leave the real module in a consistent state:
 *   CKR_SESSION_HANDLE_INVALID  the session is really closed in the real module;
 *   CKR_USER_NOT_LOGGED_IN      the token is really logged out (C_Logout, as on a real token that lost its login);
 *   CKR_DEVICE_REMOVED          the device counts as removed: every later call except C_Initialize, C_Finalize and
 *                               C_GetFunctionList fails with CKR_DEVICE_REMOVED until a C_Initialize succeeds, as a
 *                               real device loss needs C_Finalize + C_Initialize once the device is back. While a
 *                               rule still fails C_Initialize (e.g. "fail * CKR_DEVICE_REMOVED"), the device stays
 *                               away.
 *   any failure of a call that ends the session's active operation (C_Encrypt, C_Decrypt, C_Sign, ...): the real
 *                               call is made first (its output is discarded), so the real operation ends as well;
 *                               with `leave-active` it is not, and the operation stays active in the real session, as
 *                               on a token that does not end operations on errors.
 * C_Finalize and C_Initialize are forwarded: the real module is really finalised and initialised again.
 */
#include "faultpkcs11.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit-1/p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility("default")))

/* Every function of the v2.40 function list except C_GetFunctionList, which is handled apart.
 * S: the first parameter is the session handle `s`. N: no session parameter. T: like S, and the call ends the
 * session's active operation even when it fails (PKCS#11 v2.40 5.2), so a failure injected there is preceded by the
 * real call: the real module's operation ends too. */
#define FAULT_FUNCTIONS(S, N, T)                                                                                        \
    N(C_Initialize, (CK_VOID_PTR a), (a))                                                                              \
    N(C_Finalize, (CK_VOID_PTR a), (a))                                                                                \
    N(C_GetInfo, (CK_INFO_PTR a), (a))                                                                                 \
    N(C_GetSlotList, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c))                                        \
    N(C_GetSlotInfo, (CK_SLOT_ID a, CK_SLOT_INFO_PTR b), (a, b))                                                       \
    N(C_GetTokenInfo, (CK_SLOT_ID a, CK_TOKEN_INFO_PTR b), (a, b))                                                     \
    N(C_GetMechanismList, (CK_SLOT_ID a, CK_MECHANISM_TYPE_PTR b, CK_ULONG_PTR c), (a, b, c))                          \
    N(C_GetMechanismInfo, (CK_SLOT_ID a, CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))                     \
    N(C_InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d))                     \
    S(C_InitPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR a, CK_ULONG b), (s, a, b))                                      \
    S(C_SetPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR a, CK_ULONG b, CK_UTF8CHAR_PTR c, CK_ULONG d), (s, a, b, c, d))   \
    N(C_OpenSession, (CK_SLOT_ID a, CK_FLAGS b, CK_VOID_PTR c, CK_NOTIFY d, CK_SESSION_HANDLE_PTR e), (a, b, c, d, e)) \
    S(C_CloseSession, (CK_SESSION_HANDLE s), (s))                                                                      \
    N(C_CloseAllSessions, (CK_SLOT_ID a), (a))                                                                         \
    S(C_GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR a), (s, a))                                          \
    S(C_GetOperationState, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))                            \
    S(C_SetOperationState, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d),   \
      (s, a, b, c, d))                                                                                                 \
    S(C_Login, (CK_SESSION_HANDLE s, CK_USER_TYPE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (s, a, b, c))                     \
    S(C_Logout, (CK_SESSION_HANDLE s), (s))                                                                            \
    S(C_CreateObject, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR a, CK_ULONG b, CK_OBJECT_HANDLE_PTR c), (s, a, b, c))     \
    S(C_CopyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d), \
      (s, a, b, c, d))                                                                                                 \
    S(C_DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a), (s, a))                                              \
    S(C_GetObjectSize, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ULONG_PTR b), (s, a, b))                           \
    S(C_GetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (s, a, b, c))    \
    S(C_SetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c), (s, a, b, c))    \
    S(C_FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR a, CK_ULONG b), (s, a, b))                             \
    S(C_FindObjects, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR a, CK_ULONG b, CK_ULONG_PTR c), (s, a, b, c))          \
    S(C_FindObjectsFinal, (CK_SESSION_HANDLE s), (s))                                                                  \
    S(C_EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (s, a, b))                         \
    T(C_Encrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))     \
    T(C_EncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),                \
      (s, a, b, c, d))                                                                                                 \
    T(C_EncryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))                                 \
    S(C_DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (s, a, b))                         \
    T(C_Decrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))     \
    T(C_DecryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),                \
      (s, a, b, c, d))                                                                                                 \
    T(C_DecryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))                                 \
    S(C_DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a), (s, a))                                                 \
    T(C_Digest, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))      \
    T(C_DigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))                                     \
    T(C_DigestKey, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a), (s, a))                                                  \
    T(C_DigestFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))                                  \
    S(C_SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (s, a, b))                            \
    T(C_Sign, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))        \
    T(C_SignUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))                                       \
    T(C_SignFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))                                    \
    S(C_SignRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (s, a, b))                     \
    T(C_SignRecover, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d)) \
    S(C_VerifyInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (s, a, b))                          \
    T(C_Verify, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG d), (s, a, b, c, d))          \
    T(C_VerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))                                     \
    T(C_VerifyFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))                                      \
    S(C_VerifyRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b), (s, a, b))                   \
    T(C_VerifyRecover, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),                \
      (s, a, b, c, d))                                                                                                 \
    T(C_DigestEncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),          \
      (s, a, b, c, d))                                                                                                 \
    T(C_DecryptDigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),          \
      (s, a, b, c, d))                                                                                                 \
    T(C_SignEncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),            \
      (s, a, b, c, d))                                                                                                 \
    T(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),          \
      (s, a, b, c, d))                                                                                                 \
    S(C_GenerateKey, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d), \
      (s, a, b, c, d))                                                                                                 \
    S(C_GenerateKeyPair,                                                                                               \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_ATTRIBUTE_PTR d, CK_ULONG e,        \
       CK_OBJECT_HANDLE_PTR f, CK_OBJECT_HANDLE_PTR g),                                                                \
      (s, a, b, c, d, e, f, g))                                                                                        \
    S(C_WrapKey,                                                                                                       \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG_PTR e), \
      (s, a, b, c, d, e))                                                                                              \
    S(C_UnwrapKey,                                                                                                     \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_BYTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e,      \
       CK_ULONG f, CK_OBJECT_HANDLE_PTR g),                                                                            \
      (s, a, b, c, d, e, f, g))                                                                                        \
    S(C_DeriveKey,                                                                                                     \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d,                    \
       CK_OBJECT_HANDLE_PTR e),                                                                                        \
      (s, a, b, c, d, e))                                                                                              \
    S(C_SeedRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))                                       \
    S(C_GenerateRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))                                   \
    S(C_GetFunctionStatus, (CK_SESSION_HANDLE s), (s))                                                                 \
    S(C_CancelFunction, (CK_SESSION_HANDLE s), (s))                                                                    \
    N(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))

/* Function indices; F_C_GetFunctionList comes last. */
#define ENUM_ENTRY(name, params, args) F_##name,
enum { FAULT_FUNCTIONS(ENUM_ENTRY, ENUM_ENTRY, ENUM_ENTRY) F_C_GetFunctionList, F_COUNT };
#undef ENUM_ENTRY

#define NAME_ENTRY(name, params, args) #name,
static const char *const function_names[F_COUNT] = {FAULT_FUNCTIONS(NAME_ENTRY, NAME_ENTRY, NAME_ENTRY) "C_GetFunctionList"};
#undef NAME_ENTRY

static const struct {
    const char *name;
    CK_RV rv;
} rv_names[] = {
    {"CKR_OK", CKR_OK},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
    {"CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID},
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD},
    {"CKR_DATA_INVALID", CKR_DATA_INVALID},
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID},
    {"CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED},
    {"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
    {"CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID},
    {"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"CKR_OPERATION_NOT_INITIALIZED", CKR_OPERATION_NOT_INITIALIZED},
    {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
};

#define MAX_RULES 64
enum rule_kind { RULE_FAIL, RULE_DELAY };

struct rule {
    enum rule_kind kind;
    int function;        /* an index, or -1 for `*` */
    CK_RV rv;            /* RULE_FAIL */
    long remaining;      /* RULE_FAIL: calls left to fail, -1 for every call */
    int leave_active;    /* RULE_FAIL: do not end the real operation */
    long milliseconds;   /* RULE_DELAY */
};

/* Everything below is guarded by `lock`, except the call counters (atomic) and the read-only configuration. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static int rule_count;
static int plan_seen;                        /* whether `plan_stat` describes the file the rules came from */
static struct stat plan_stat;
static CK_RV device_lost;                    /* CKR_OK, or the CK_RV every call fails with until C_Initialize */

static atomic_ulong call_counts[F_COUNT];

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_FUNCTION_LIST_PTR real;            /* the real module's list; set once in `load` */
static const char *control_path;
static int log_fd = -1;
static char load_error[512];

static CK_FUNCTION_LIST fault_list;

/* ---- the fault plan ---- */

static int function_index(const char *name) {
    for (int i = 0; i < F_COUNT; i++) {
        if (strcmp(function_names[i], name) == 0) return i;
    }
    return -2;
}

static int parse_rv(const char *text, CK_RV *rv) {
    for (size_t i = 0; i < sizeof rv_names / sizeof rv_names[0]; i++) {
        if (strcmp(rv_names[i].name, text) == 0) {
            *rv = rv_names[i].rv;
            return 1;
        }
    }
    char *end = NULL;
    errno = 0;
    unsigned long value = strtoul(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0') return 0;
    *rv = (CK_RV)value;
    return 1;
}

static void complain(const char *token, const char *why) {
    fprintf(stderr, "faultpkcs11: %s: ignoring a rule at '%s': %s\n", control_path, token, why);
}

#define REJECT(token, why)     \
    do {                       \
        complain(token, why);  \
        return;                \
    } while (0)

static void parse_line(char *line) {
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *save = NULL;
    char *verb = strtok_r(line, " \t\r\n", &save);
    if (!verb) return;
    char *target = strtok_r(NULL, " \t\r\n", &save);
    char *value = strtok_r(NULL, " \t\r\n", &save);
    char *count = strtok_r(NULL, " \t\r\n", &save);
    char *option = strtok_r(NULL, " \t\r\n", &save);
    if (count && strcmp(count, "leave-active") == 0) {
        option = count;
        count = NULL;
    }
    if (!target || !value) REJECT(verb, "expected '<verb> <FUNCTION|*> <value>'");
    if (rule_count == MAX_RULES) REJECT(verb, "too many rules");
    struct rule r = {.function = -1, .remaining = -1};
    if (strcmp(target, "*") != 0) {
        r.function = function_index(target);
        if (r.function < 0) REJECT(target, "unknown function");
    }
    if (strcmp(verb, "fail") == 0) {
        r.kind = RULE_FAIL;
        if (!parse_rv(value, &r.rv)) REJECT(value, "unknown CK_RV");
        if (count) {
            char *end = NULL;
            r.remaining = strtol(count, &end, 10);
            if (end == count || *end != '\0' || r.remaining < 0) REJECT(count, "bad count");
        }
        if (option) {
            if (strcmp(option, "leave-active") != 0) REJECT(option, "unknown option (leave-active)");
            r.leave_active = 1;
        }
    } else if (strcmp(verb, "delay") == 0) {
        r.kind = RULE_DELAY;
        char *end = NULL;
        r.milliseconds = strtol(value, &end, 10);
        if (end == value || *end != '\0' || r.milliseconds < 0) REJECT(value, "bad milliseconds");
    } else {
        REJECT(verb, "unknown verb (fail, delay)");
    }
    rules[rule_count++] = r;
}

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Re-reads the plan when the control file changed. Called with `lock` held. */
static void refresh_plan(void) {
    if (!control_path) return;
    struct stat st;
    if (stat(control_path, &st) != 0) {
        /* No file: pass everything through. */
        rule_count = 0;
        plan_seen = 0;
        return;
    }
    if (plan_seen && same_file(&st, &plan_stat)) return;
    rule_count = 0;
    plan_stat = st;
    plan_seen = 1;
    FILE *file = fopen(control_path, "re");
    if (!file) return;
    char line[512];
    while (fgets(line, sizeof line, file)) parse_line(line);
    fclose(file);
}

static int matches(const struct rule *r, int function) {
    if (r->function >= 0) return r->function == function;
    return function != F_C_GetFunctionList && function != F_C_Finalize;
}

/* ---- calls ---- */

static void log_call(int function, CK_RV rv) {
    if (log_fd < 0) return;
    char line[128];
    int length = snprintf(line, sizeof line, "%ld %s 0x%lx\n", (long)getpid(), function_names[function], (unsigned long)rv);
    if (length > 0 && (size_t)length < sizeof line) {
        ssize_t written = write(log_fd, line, (size_t)length);
        (void)written;
    }
}

static void sleep_ms(long milliseconds) {
    struct timespec ts = {.tv_sec = milliseconds / 1000, .tv_nsec = (milliseconds % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Consults the plan before a call (counting it, sleeping for delays). Returns 1 and sets *rv when it is to fail. */
static int fault_enter(int function, CK_RV *rv, int *leave_active) {
    atomic_fetch_add_explicit(&call_counts[function], 1, memory_order_relaxed);
    long delay = 0;
    int fail = 0;
    pthread_mutex_lock(&lock);
    refresh_plan();
    for (int i = 0; i < rule_count; i++) {
        struct rule *r = &rules[i];
        if (!matches(r, function)) continue;
        if (r->kind == RULE_DELAY) {
            delay += r->milliseconds;
        } else if (!fail && r->remaining != 0) {
            if (r->remaining > 0) r->remaining--;
            fail = 1;
            *rv = r->rv;
            *leave_active = r->leave_active;
        }
    }
    int exempt = function == F_C_Initialize || function == F_C_Finalize || function == F_C_GetFunctionList;
    if (!fail && device_lost != CKR_OK && !exempt) {
        fail = 1;
        *rv = device_lost;
    }
    if (fail && *rv == CKR_DEVICE_REMOVED) device_lost = CKR_DEVICE_REMOVED;
    pthread_mutex_unlock(&lock);

    if (delay > 0) sleep_ms(delay);
    return fail;
}

/* Whether a failing call that ends the active operation should still reach the real module first. Not when the
 * session is about to be closed or the device counts as removed (the application must finalise anyway). */
static int forward_before_failing(CK_RV rv, int leave_active) {
    return !leave_active && rv != CKR_SESSION_HANDLE_INVALID && rv != CKR_DEVICE_REMOVED;
}

/* Makes the real module agree with an injected error. */
static void apply_fault(CK_SESSION_HANDLE session, CK_RV rv) {
    if (session == CK_INVALID_HANDLE) return;
    if (rv == CKR_SESSION_HANDLE_INVALID) {
        (void)real->C_CloseSession(session);
    } else if (rv == CKR_USER_NOT_LOGGED_IN) {
        (void)real->C_Logout(session);
    }
}

/* Logs a call's result and notes a successful C_Initialize (the device is back). */
static CK_RV fault_leave(int function, CK_RV rv) {
    if (function == F_C_Initialize && (rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
        pthread_mutex_lock(&lock);
        device_lost = CKR_OK;
        pthread_mutex_unlock(&lock);
    }
    log_call(function, rv);
    return rv;
}

#define WRAP_S(name, params, args)                                                                   \
    static CK_RV fault_##name params {                                                               \
        CK_RV rv = CKR_OK;                                                                           \
        int leave_active = 0;                                                                        \
        if (fault_enter(F_##name, &rv, &leave_active)) {                                             \
            apply_fault(s, rv);                                                                      \
            return fault_leave(F_##name, rv);                                                        \
        }                                                                                            \
        return fault_leave(F_##name, real->name args);                                               \
    }
#define WRAP_N(name, params, args)                                                                   \
    static CK_RV fault_##name params {                                                               \
        CK_RV rv = CKR_OK;                                                                           \
        int leave_active = 0;                                                                        \
        if (fault_enter(F_##name, &rv, &leave_active)) return fault_leave(F_##name, rv);             \
        return fault_leave(F_##name, real->name args);                                               \
    }
#define WRAP_T(name, params, args)                                                                   \
    static CK_RV fault_##name params {                                                               \
        CK_RV rv = CKR_OK;                                                                           \
        int leave_active = 0;                                                                        \
        if (fault_enter(F_##name, &rv, &leave_active)) {                                             \
            if (forward_before_failing(rv, leave_active)) (void)real->name args;                     \
            apply_fault(s, rv);                                                                      \
            return fault_leave(F_##name, rv);                                                        \
        }                                                                                            \
        return fault_leave(F_##name, real->name args);                                               \
    }
FAULT_FUNCTIONS(WRAP_S, WRAP_N, WRAP_T)
#undef WRAP_S
#undef WRAP_N
#undef WRAP_T

static CK_RV fault_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    atomic_fetch_add_explicit(&call_counts[F_C_GetFunctionList], 1, memory_order_relaxed);
    if (!list) return fault_leave(F_C_GetFunctionList, CKR_ARGUMENTS_BAD);
    *list = &fault_list;
    return fault_leave(F_C_GetFunctionList, CKR_OK);
}

/* ---- loading ---- */

static void load(void) {
    const char *path = getenv("FAULTPKCS11_MODULE");
    if (!path || !*path) path = "/usr/lib/softhsm/libsofthsm2.so";
    const char *control = getenv("FAULTPKCS11_CONTROL");
    if (control && *control) control_path = strdup(control);
    const char *log_path = getenv("FAULTPKCS11_LOG");
    if (log_path && *log_path) log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);

    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(load_error, sizeof load_error, "dlopen %s: %s", path, dlerror());
        return;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR list = NULL;
    if (!get || get(&list) != CKR_OK || !list) {
        snprintf(load_error, sizeof load_error, "%s has no usable C_GetFunctionList", path);
        return;
    }
    fault_list.version = list->version;
#define FILL(name, params, args) fault_list.name = fault_##name;
    FAULT_FUNCTIONS(FILL, FILL, FILL)
#undef FILL
    fault_list.C_GetFunctionList = fault_C_GetFunctionList;
    real = list;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    pthread_once(&load_once, load);
    if (!real) {
        fprintf(stderr, "faultpkcs11: %s\n", load_error);
        return CKR_GENERAL_ERROR;
    }
    return fault_C_GetFunctionList(list);
}

EXPORT unsigned long FaultPKCS11_CallCount(const char *function) {
    int index = function ? function_index(function) : -1;
    if (index < 0) return 0;
    return atomic_load_explicit(&call_counts[index], memory_order_relaxed);
}
