/* errname.c: the stable code strings of error codes (docs/errors.md). Pure C, no Lua: the
 * numbers are Berkeley DB's, errno's and our own MTASTS_E* (mtasts.h); the bindings push the
 * string as the third value of a failure. Lower-case and hyphenated: DB_RUNRECOVERY is
 * "db-runrecovery", ENOSPC is "enospc". */
#include "mtasts.h"

#include <db.h>
#include <errno.h>

const char *mtasts_code_name(int rc) {
  switch (rc) {
  case DB_NOTFOUND: return "db-notfound";
  case DB_LOCK_DEADLOCK: return "db-lock-deadlock";
  case DB_LOCK_NOTGRANTED: return "db-lock-notgranted";
  case DB_RUNRECOVERY: return "db-runrecovery";
  case DB_VERIFY_BAD: return "db-verify-bad";
  case DB_OLD_VERSION: return "db-old-version";
  case DB_VERSION_MISMATCH: return "db-version-mismatch";
  case DB_PAGE_NOTFOUND: return "db-page-notfound";
  case MTASTS_ECORRUPT: return "corrupt";
  case MTASTS_EPOLICY: return "policy-syntax";
  case MTASTS_EDOMAIN: return "domain-syntax";
  case MTASTS_ECONFIG: return "config";
  case MTASTS_ELOCAL: return "local";
  case ENOENT: return "enoent";
  case EACCES: return "eacces";
  case EPERM: return "eperm";
  case ENOSPC: return "enospc";
  case EDQUOT: return "edquot";
  case EFBIG: return "efbig";
  case EROFS: return "erofs";
  case EIO: return "eio";
  case ENOMEM: return "enomem";
  case EINVAL: return "einval";
  case ENOTDIR: return "enotdir";
  case EEXIST: return "eexist";
  case EAGAIN: return "eagain";
  case EBUSY: return "ebusy";
  case ENAMETOOLONG: return "enametoolong";
  case ETIMEDOUT: return "etimedout";
  case ELOOP: return "eloop";
  default: return "bdb-error";
  }
}
